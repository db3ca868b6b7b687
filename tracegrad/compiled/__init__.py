"""The compiled callables: the last stage of the flow (bind and run).

``tg.compile`` returns a ``CompiledModule`` (``module.py``) or a ``CompiledFunction``
(``function.py``); both are targets of one ``Specializer`` (``specializer.py``: the cache of
specializations per input signature, the recompile policy and the public views). A call reads
its ``signature`` (``signature.py``) and the state it reaches (``state.py``, ``captures.py``),
traces (``traced.py``), runs the passes and generates a ``Program`` (``program.py``; a module's
forward and backward in ``module_program.py``, a whole training step in ``step_program.py``),
binds it to the live tensors through a generated runner, and runs it. ``views.py`` keeps
returned views views, ``check.py`` compares passes under ``check=True``, ``explain.py`` writes
the report and ``users_line.py`` names errors at the user's line.
"""
