from refusal.activations.collector import CollectionPlan, collect_activations, default_store_dir, fingerprint
from refusal.activations.store import ActivationStore

__all__ = ["ActivationStore", "CollectionPlan", "collect_activations", "default_store_dir", "fingerprint"]
