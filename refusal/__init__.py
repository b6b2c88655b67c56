"""refusal-circuits: is refusal in a chat LLM one shared mechanism or one per harm category?"""

__version__ = "0.1.0"
