"""One call's conversation: the session orchestrating turn-taking, the context, the speaker and fixed phrases."""
