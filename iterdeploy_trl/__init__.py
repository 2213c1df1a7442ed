"""iterdeploy-trl: iterative deployment of LLMs on planning tasks, validated by VAL, on TRL."""

__version__ = "0.1.0"
