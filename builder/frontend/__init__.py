"""The Dockerfile front end: text in, typed instructions out, with no I/O and nothing executed.

``dockerfile`` turns text into raw instructions (directives, line structure, heredocs), ``shell`` is the word
lexer and variable expander, ``instructions`` gives each instruction its typed value, and ``checks`` holds the
build checks that apply to a file alone.
"""
