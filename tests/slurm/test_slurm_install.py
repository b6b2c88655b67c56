"""When the slurm tests skip and when they fail (no cluster is started here: apt-get is stubbed)."""
import apt_install
import pytest
import slurm_install


@pytest.fixture
def no_slurm_failing_apt(monkeypatch, failing_apt):
    """No SLURM binaries, root, apt-get present, and every apt-get call fails."""
    monkeypatch.setattr(slurm_install, "installed", lambda: False)
    return failing_apt


def test_failed_install_under_ci_fails(no_slurm_failing_apt, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true as root with apt-get, yet apt-get install .* failed"):
        slurm_install.require_slurm()
    assert [c[:2] for c in no_slurm_failing_apt] == [("apt-get", "install"), ("apt-get", "update"),
                                                     ("apt-get", "install")]


def test_failed_install_outside_ci_skips(no_slurm_failing_apt, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install slurm-wlm munge failed"):
        slurm_install.require_slurm()


def test_without_root_skips_even_under_ci(no_slurm_failing_apt, monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(apt_install.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        slurm_install.require_slurm()
    assert no_slurm_failing_apt == []
