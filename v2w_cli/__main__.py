"""``python -m v2w_cli`` (also what ``accelerate launch -m v2w_cli ...`` runs)."""

from v2w_cli.app import main

main()
