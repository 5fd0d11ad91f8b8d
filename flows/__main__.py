"""`python -m flows` is `wrl`."""

from flows.cli import main

main()
