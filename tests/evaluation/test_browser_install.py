"""When the browser tests skip and when they fail (no browser is installed here: apt-get is stubbed)."""
import subprocess

import browser_install
import pytest


@pytest.fixture
def no_chromium_failing_apt(monkeypatch):
    """No Chromium, root, apt-get present, and every apt-get call fails."""
    calls = []

    def failing_sh(*cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(list(cmd), 100, "", "E: Unable to locate package chromium")

    monkeypatch.setattr(browser_install, "chromium_path", lambda: None)
    monkeypatch.setattr(browser_install.shutil, "which", lambda b: "/usr/bin/apt-get" if b == "apt-get" else None)
    monkeypatch.setattr(browser_install.os, "geteuid", lambda: 0)
    monkeypatch.setattr(browser_install, "sh", failing_sh)
    return calls


def test_failed_install_under_ci_fails(no_chromium_failing_apt, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true as root with apt-get, yet apt-get install chromium failed"):
        browser_install.require_browser()
    assert [c[:2] for c in no_chromium_failing_apt] == [("apt-get", "install"), ("apt-get", "update"),
                                                        ("apt-get", "install")]


def test_failed_install_outside_ci_skips(no_chromium_failing_apt, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium failed"):
        browser_install.require_browser()


def test_without_root_skips_even_under_ci(no_chromium_failing_apt, monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(browser_install.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        browser_install.require_browser()
    assert no_chromium_failing_apt == []


def test_chromium_env_var_wins(monkeypatch, tmp_path):
    exe = tmp_path / "my-chromium"
    exe.write_text("")
    monkeypatch.setenv("CHROMIUM", str(exe))
    assert browser_install.chromium_path() == str(exe)
