"""errors.first_line: one line of an error's message, whatever the message looks like."""
import pytest

from framework import errors


@pytest.mark.parametrize("message, want", [
    ("disk full", "disk full"),
    ("first\nsecond\nthird", "first"),
    ("\n  padded first  \nsecond", "padded first"),
    ("{{function_node __inference_step_12}} Input is not finite\n\t [[node x]]", "Input is not finite"),
])
def test_the_first_line_of_the_message(message, want):
    assert errors.first_line(ValueError(message)) == want


def test_an_empty_message_gives_the_class_name():
    assert errors.first_line(KeyError()) == "KeyError"
    assert errors.first_line(RuntimeError("  \n ")) == "RuntimeError"


def test_a_text_is_taken_like_a_message_and_an_empty_text_gives_nothing():
    assert errors.first_line("No space left on device: '/runs/a'\nmore") == "No space left on device: '/runs/a'"
    assert errors.first_line("") == ""


def test_the_line_is_cut_at_the_limit():
    assert errors.first_line(ValueError("x" * 1000)) == "x" * 400
    assert errors.first_line(ValueError("abcdef"), limit=3) == "abc"


def test_errors_imports_nothing_of_the_framework():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(errors))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] == "framework"], names
