"""Sample sets: members, non-members and perplexity text, per model."""
