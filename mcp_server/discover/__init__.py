"""`autotts discover`: the built-in discovery loop with an explorer model behind the Anthropic Messages API.

One module per concept: `pricing` (dollars), `client` (the API call, retries, errors), `toolbox` (the MCP
server's tools for an Anthropic tool loop), `context` (what the explorer reads), `loop` (rounds, budget, resume),
`report` (selection and the held-out Table-1 view). The records live in the run store (`core.discovery.log`).
"""
