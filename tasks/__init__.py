"""Inner training problems (see the tasks issue)."""
