"""Fuzzing the .nvp reader: a structure-aware mutator (``mutator``), a seed corpus (``corpus``), a
child-process runner with memory and time limits (``runner``, ``worker``), the long run (``run``)
and a coverage-guided atheris target (``atheris_target``). See docs/fuzz.md."""
