"""The console client ``chatapp``: an interactive line editor on a terminal, line-per-event script mode otherwise.

- :mod:`chatapp.cli.options`: the command line (pure).
- :mod:`chatapp.cli.commands`: ``/command`` parsing and dispatch to a :class:`~chatapp.app.ChatClient` (no I/O).
- :mod:`chatapp.cli.render`: events as script lines or human lines, the transfer status line (pure).
- :mod:`chatapp.cli.script`, :mod:`chatapp.cli.terminal`, :mod:`chatapp.cli.oneshot`: the three front ends.
- :mod:`chatapp.cli.main`: ``main()``, exit codes, passwords, errors.
"""
