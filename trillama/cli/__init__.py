"""The ``trillama`` command: ``serve``, and the client commands that talk HTTP to a server.

``main`` (the parser and ``serve``), ``commands`` (list, ps, show, cp, rm, stop, pull, push),
``create``, ``run`` with its interactive session ``repl``, ``launch`` (coding agents), and the
terminal output they share (``termout``, ``showinfo``). The client commands know the server only
through its HTTP API, as the ``ollama`` CLI does.
"""
