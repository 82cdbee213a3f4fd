"""A slow, obviously-correct reference for the sample features: plain Python over events sorted by time.

Events are visited one timestamp at a time. Every event of a second first reads the running state (so it
sees exactly the ratings strictly before its second), then the whole second is added to the state. Running
mean/variance use Welford's update (a different method from the SQL's sums of squares).
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import groupby


class Running:
    """Count, mean and sample variance by Welford's algorithm."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def avg(self) -> float | None:
        return self.mean if self.n else None

    def std(self) -> float | None:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n >= 2 else None


def reference_samples(ratings: list[tuple], items: dict[int, tuple], threshold: float = 3.5,
                      recent_n: int = 10, *, itemcf: bool = False, itemcf_window: int = 10,
                      itemcf_history: int = 20, bayes: bool = False, prior: float = 3.0) -> dict[tuple, dict]:
    """Features of every rating.

    Args:
        ratings: (user_id, item_id, rating, timestamp) tuples.
        items: item_id -> (year or None, genres list).
        itemcf, itemcf_window, itemcf_history, bayes, prior: the FeatureConfig settings of userItemCFScore and
            movieBayesAvgRating (the CF score is None when ``itemcf`` is off, the average when ``bayes`` is).

    Returns:
        (user_id, item_id, timestamp) -> {column: value} for every sample column.
    """
    user_count = defaultdict(int)
    user_rating = defaultdict(Running)
    user_year = defaultdict(Running)
    user_pos = defaultdict(int)
    user_last = {}
    user_positives = defaultdict(list)  # item ids in the order they happened (same second: larger id first)
    user_genres = defaultdict(lambda: defaultdict(int))
    movie_rating = defaultdict(Running)
    movie_pos = defaultdict(int)
    movie_first = {}
    movie_times = defaultdict(list)  # rating times of each movie, for the 7 / 30 day counts
    user_genre_sum = defaultdict(lambda: defaultdict(float))  # over every rating (not only positives)
    user_genre_n = defaultdict(lambda: defaultdict(int))
    # movieBayesAvgRating: every rating so far; userItemCFScore: windowed co-occurrence counts of positive
    # pairs, and each user's ratings in the order they happened (same second: larger id first)
    global_sum, global_n = 0.0, 0
    co: dict[tuple, int] = defaultdict(int)
    user_history = defaultdict(list)
    user_seconds = defaultdict(dict)  # user -> {second: [its ratings]} in time order (the recent-rating columns)
    out = {}
    events = sorted(ratings, key=lambda r: r[3])
    for t, group in groupby(events, key=lambda r: r[3]):
        group = list(group)
        for user, item, rating, _ in group:
            year, genres = items.get(item, (None, []))
            label = 1 if rating >= threshold else 0
            n_user = user_count[user]
            recent = list(reversed(user_positives[user]))[:recent_n]
            top = sorted(user_genres[user].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
            mr = movie_rating[item]
            row = {
                "userId": user, "movieId": item, "rating": rating, "timestamp": t, "label": label,
                "releaseYear": year, "movieGenres": list(genres),
                "movieGenre1": genres[0] if len(genres) > 0 else None,
                "movieGenre2": genres[1] if len(genres) > 1 else None,
                "movieGenre3": genres[2] if len(genres) > 2 else None,
                "movieRatingCount": mr.n, "movieAvgRating": mr.avg(), "movieRatingStddev": mr.std(),
                "userRatingCount": n_user, "userAvgRating": user_rating[user].avg(),
                "userRatingStddev": user_rating[user].std(),
                "userAvgReleaseYear": user_year[user].avg(), "userReleaseYearStddev": user_year[user].std(),
                "userRecentPositives": recent,
                **{f"userRatedMovie{i}": recent[i - 1] if len(recent) >= i else None for i in range(1, 6)},
                **{f"userGenre{i}": top[i - 1][0] if len(top) >= i else None for i in range(1, 6)},
                "userGenreCounts": dict(sorted(user_genres[user].items())),
                "userPositiveRate": user_pos[user] / n_user if n_user else None,
                "userSecondsSincePrevRating": t - user_last[user] if user in user_last else None,
                "moviePositiveRate": movie_pos[item] / mr.n if mr.n else None,
                "movieSecondsSinceFirstRating": t - movie_first[item] if item in movie_first else None,
            }
            counts = user_genres[user]
            distinct = set(genres)
            norm_user = math.sqrt(sum(c * c for c in counts.values()))
            if norm_user > 0 and distinct:
                dot = sum(counts.get(g, 0) for g in distinct)
                row["userGenreCosine"] = dot / (norm_user * math.sqrt(len(distinct)))
            else:
                row["userGenreCosine"] = None
            g_n = sum(user_genre_n[user][g] for g in genres)
            row["userGenreAvgRating"] = sum(user_genre_sum[user][g] for g in genres) / g_n if g_n else None
            row["movieLast7dRatingCount"] = sum(1 for s in movie_times[item] if t - 7 * 86400 <= s < t)
            row["movieLast30dRatingCount"] = sum(1 for s in movie_times[item] if t - 30 * 86400 <= s < t)
            row["movieBayesAvgRating"] = ((mr.n * mr.mean + prior * global_sum / global_n) / (mr.n + prior)
                                          if bayes and mr.n else None)
            num = den = 0.0
            for j, r_j in list(reversed(user_history[user]))[:itemcf_history]:
                if r_j is not None and co.get((item, j), 0) > 0:
                    w = co[(item, j)] / math.sqrt(movie_pos[j])
                    num += w * r_j
                    den += w
            row["userItemCFScore"] = num / den if itemcf and den > 0 else None
            for k, name in ((1, "userLastRating"), (5, "userRecent5AvgRating"), (20, "userRecent20AvgRating")):
                recent_ratings = [r for second in list(user_seconds[user].values())[-k:] for r in second]
                row[name] = sum(recent_ratings) / len(recent_ratings) if recent_ratings else None
            out[(user, item, t)] = row
        # now the whole second becomes history
        for user, item, rating, _ in sorted(group, key=lambda r: -r[1]):
            year, genres = items.get(item, (None, []))
            label = 1 if rating >= threshold else 0
            user_count[user] += 1
            user_rating[user].add(rating)
            if year is not None:
                user_year[user].add(year)
            user_pos[user] += label
            user_last[user] = t
            movie_rating[item].add(rating)
            movie_pos[item] += label
            movie_first.setdefault(item, t)
            movie_times[item].append(t)
            user_history[user].append((item, rating))
            user_seconds[user].setdefault(t, []).append(rating)
            if rating is not None:
                global_sum += rating
                global_n += 1
            if rating is not None:
                for g in genres:
                    user_genre_sum[user][g] += rating
                    user_genre_n[user][g] += 1
            if label:
                for previous in user_positives[user][-itemcf_window:]:
                    if previous != item:
                        co[(item, previous)] += 1
                        co[(previous, item)] += 1
                user_positives[user].append(item)
                for g in genres:
                    user_genres[user][g] += 1
    return out
