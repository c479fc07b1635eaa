"""Fixtures of the end-to-end tests: the whole stack as `make run` starts it, shared."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack_process import SharedStack, Stack


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory) -> Iterator[SharedStack]:
    holder = SharedStack(lambda: tmp_path_factory.mktemp("stack"))
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def e2e_stack(shared_stack: SharedStack) -> Stack:
    """The stack, started if no earlier test left one running."""
    return shared_stack.get()
