"""Everything that speaks Label Studio: API client, auth, label config, result JSON."""
