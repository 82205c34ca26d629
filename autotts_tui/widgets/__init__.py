"""The TUI's widgets, one module per screen region (leaderboard, plot, candidate, trace, activity, help)."""
