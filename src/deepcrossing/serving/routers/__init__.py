"""One router per resource: recommend, score, users, movies, health (+ metrics), admin."""
