"""The endpoints a batch line may name, and the constants their modules share.

A leaf: it imports nothing, so validation, the Responses and scoring shapes, the engines
and the server all take the names from here without leaning on each other.
"""

from __future__ import annotations

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
SCORE = "/v1/score"
RERANK = "/v1/rerank"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, SCORE, RERANK)
SCORING = (SCORE, RERANK)  # a pair of texts in, a score out
POOLED = (EMBEDDINGS, *SCORING)  # answered by a pooling model
CHAT_LIKE = (CHAT, RESPONSES)  # answered from messages with the chat template
GENERATION = (CHAT, COMPLETIONS, RESPONSES)  # generate text (the others pool)

# ``reasoning_effort`` in chat, ``reasoning.effort`` in Responses.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
