"""`python -m helixflow …`: the same as the `helixflow` command."""

from helixflow.app.cli import main

if __name__ == "__main__":
    main()
