"""Approver tokens: the generated token file, its format, constant-time identification."""

from __future__ import annotations

import stat

import pytest

from proxy.control.auth import (
    TOKEN_FILE,
    Approver,
    ControlAuth,
    ensure_token_file,
    first_token,
    read_token_file,
)
from proxy.errors import ConfigError


def test_token_file_is_generated_once_with_mode_0600(tmp_path):
    auth = ControlAuth.from_options(tmp_path / "state")
    path = tmp_path / "state" / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    name, token = path.read_text().split()
    assert name == "operator" and len(token) >= 40
    assert auth.identify(token) == "operator"
    assert not ensure_token_file(path)                # kept on the next run
    assert ControlAuth.from_options(tmp_path / "state").identify(token) == "operator"
    assert first_token(path) == token


def test_explicit_token_wins_and_names_the_approver(tmp_path):
    auth = ControlAuth.from_options(tmp_path, "x" * 20, "bob")
    assert auth.identify("x" * 20) == "bob"
    assert not (tmp_path / TOKEN_FILE).exists()


def test_several_approvers(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# approvers\nbob aaaaaaaaaaaaaaaaaaaa\n\ncarol bbbbbbbbbbbbbbbbbbbb\n"
                    "cccccccccccccccccccc\n")
    auth = ControlAuth.from_file(path, "ops")
    assert auth.names == ("bob", "carol", "ops")
    assert auth.identify("bbbbbbbbbbbbbbbbbbbb") == "carol"
    assert auth.identify("cccccccccccccccccccc") == "ops"
    assert auth.identify("dddddddddddddddddddd") is None
    assert auth.identify("") is None and auth.identify(None) is None
    assert first_token(path) == "aaaaaaaaaaaaaaaaaaaa"


def test_bad_token_files_and_tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("a b c\n")
    with pytest.raises(ConfigError, match="NAME TOKEN"):
        read_token_file(path)
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no token"):
        read_token_file(path)
    assert first_token(tmp_path / "missing") is None
    with pytest.raises(ConfigError, match="at least 16"):
        ControlAuth.single("short")
    with pytest.raises(ConfigError):
        ControlAuth([])
    with pytest.raises(ConfigError, match="one word"):
        ControlAuth([Approver("two words", "x" * 20)])


def test_tokens_never_show_in_repr():
    a = Approver("bob", "secret-secret-secret")
    assert "secret" not in repr(a)
