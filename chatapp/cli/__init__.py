"""The console client ``chatapp``: an interactive line editor on a terminal, line-per-event script mode otherwise.

- :mod:`chatapp.cli.main`: ``main()``: reads the command line and runs the mode.
- :mod:`chatapp.cli.options`: the command line (pure).
- :mod:`chatapp.cli.errors`: exit codes, :class:`~chatapp.cli.errors.Fatal`, errors in one safe line.
- :mod:`chatapp.cli.login`: prompts, credentials, starting the client; :mod:`chatapp.cli.logs`: the debug log.
- :mod:`chatapp.cli.run`: one run of the program (start, stop on a signal, READY), shared by every mode.
- :mod:`chatapp.cli.events`: the console's own events (READY, OK..., ERROR, WHO...), beside :mod:`chatapp.events`.
- :mod:`chatapp.cli.commands`: ``/command`` parsing and dispatch to a :class:`~chatapp.app.ChatClient` (no I/O).
- :mod:`chatapp.cli.render`: events as script lines or human lines, the transfer status line (pure).
- :mod:`chatapp.cli.script`, :mod:`chatapp.cli.terminal`, :mod:`chatapp.cli.oneshot`: the three front ends.

Imports go one way, down that list from ``main`` (tests/test_import_graph.py keeps it so).
"""
