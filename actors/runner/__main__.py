"""``python -m trillama.actors.runner --spec '{...}'``: one runner process (see ``process``)."""

from trillama.actors.runner.process import main

if __name__ == "__main__":
    main()
