"""What every entry point prints around its task."""
from omegaconf import OmegaConf

from refusal.tasks.runner import announce_model


def test_an_organism_run_says_first_that_it_is_not_a_production_model(capsys):
    announce_model(OmegaConf.create({"model": {"source": "organism", "name": "Org-1"}}))
    out = capsys.readouterr().out
    assert out.startswith("NOTE: refusal model organism 'Org-1'") and "NOT a production chat model" in out
    announce_model(OmegaConf.create({"model": {"source": "gguf_package", "name": "Base"}}))
    assert capsys.readouterr().out == ""
