"""When the browser tests skip and when they fail (no browser is installed here: apt-get is stubbed)."""
import browser_install
import apt_install
import pytest


@pytest.fixture
def no_chromium_failing_apt(monkeypatch, failing_apt):
    """No Chromium, root, apt-get present, and every apt-get call fails."""
    monkeypatch.setattr(browser_install, "chromium_path", lambda: None)
    return failing_apt


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
    monkeypatch.setattr(apt_install.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        browser_install.require_browser()
    assert no_chromium_failing_apt == []


def test_chromium_env_var_wins(monkeypatch, tmp_path):
    exe = tmp_path / "my-chromium"
    exe.write_text("")
    monkeypatch.setenv("CHROMIUM", str(exe))
    assert browser_install.chromium_path() == str(exe)
