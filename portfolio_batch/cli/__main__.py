"""``python -m portfolio_batch.cli``: the same as the ``portfolio-batch`` command."""

from portfolio_batch.cli import main

if __name__ == "__main__":
    main()
