"""``environment.restored``: a variable set or changed for a while is put back as it was."""

import os

import pytest

from motorsearch.environment import restored

NAME = "MOTORSEARCH_TEST_VARIABLE"


@pytest.mark.parametrize("before", [None, "old"])
@pytest.mark.parametrize("value", ["new", None])
def test_the_variable_is_put_back_as_it_was(monkeypatch, before, value):
    if before is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, before)
    with restored(NAME, value) if value is not None else restored(NAME):
        assert os.environ.get(NAME) == (value if value is not None else before)
        os.environ.pop(NAME, None)  # code inside may unset it (MLflow does)
    assert os.environ.get(NAME) == before


def test_it_is_put_back_after_an_error(monkeypatch):
    monkeypatch.setenv(NAME, "old")
    with pytest.raises(RuntimeError), restored(NAME, "new"):
        raise RuntimeError("boom")
    assert os.environ[NAME] == "old"
