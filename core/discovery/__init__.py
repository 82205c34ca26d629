"""Discovery: a study of candidate controllers, evaluated, recorded and read back.

* `study` — the study folder: its configuration (`study.json`), search and held-out environments;
* `records` — typed records of everything the run store holds (runs, summaries, results, traces, sessions);
* `store` — the SQLite run store: one-transaction writes and the reader API every viewer uses;
* `log` — the record of `autotts discover` sessions, rounds and API calls in the same store;
* `service` — `DiscoveryService`: baselines, the evaluation queue, summaries and held-out evaluation, the one
  writer of runs (the MCP server, the discover loop, `autotts heldout` and the TUI's demo study drive it).

Nothing here imports the MCP SDK, an LLM SDK, click or Textual.
"""
