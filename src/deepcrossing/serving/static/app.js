// deepcrossing web page: plain JS, no build step. Routes: #/ (genre collections), #/user/<id>, #/movie/<id>.
"use strict";

const $ = (id) => document.getElementById(id);

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function movieItem(movie, extra) {
  const li = document.createElement("li");
  li.className = "movie";
  const link = text("a", movie.title || `movie ${movie.movieId}`, "title");
  link.href = `#/movie/${movie.movieId}`;
  li.appendChild(link);
  li.appendChild(text("span", ` ${(movie.genres || []).join(", ")}`, "genres"));
  if (extra) li.appendChild(extra);
  return li;
}

// A SparrowRecSys-style card of a compat Movie: title, year, genres, average rating.
function movieCard(movie) {
  const card = document.createElement("div");
  card.className = "card";
  const link = text("a", movie.title || `movie ${movie.movieId}`, "title");
  link.href = `#/movie/${movie.movieId}`;
  card.appendChild(link);
  const year = movie.releaseYear > 0 ? `${movie.releaseYear} · ` : "";
  card.appendChild(text("div", `${year}${(movie.genres || []).join(", ")}`, "genres"));
  card.appendChild(text("div", `★ ${Number(movie.averageRating).toPrecision(2)} (${movie.ratingNumber})`, "rating"));
  return card;
}

function channelLabel(channel) {
  return text("span", channel, `channel channel-${channel}`);
}

function setStatus(message, isError) {
  $("status").textContent = message || "";
  $("status").className = isError ? "error" : "";
}

let genreList = null;   // from /info, once

async function showHome() {
  $("user-view").hidden = true;
  $("movie-view").hidden = true;
  setStatus("Type a user id, or pick one of the examples.");
  try {
    if (genreList === null) genreList = (await api("/info")).genres || [];
    const genres = genreList.slice(0, 6);
    const rows = await Promise.all(genres.map(
      (g) => api(`/getrecommendation?genre=${encodeURIComponent(g)}&size=8&sortby=rating`)));
    $("genre-rows").replaceChildren(...genres.map((genre, i) => {
      const row = document.createElement("div");
      row.className = "genre-row";
      row.dataset.genre = genre;
      row.appendChild(text("h3", genre));
      const cards = document.createElement("div");
      cards.className = "cards";
      cards.replaceChildren(...rows[i].map(movieCard));
      row.appendChild(cards);
      return row;
    }));
    if (location.hash.match(/^#\/(user|movie)\//)) return;   // the person moved on meanwhile
    $("home-view").hidden = false;
  } catch (err) {
    setStatus(`Could not load the genre collections: ${err.message}`, true);
  }
}

async function showUser(userId) {
  $("home-view").hidden = true;
  $("movie-view").hidden = true;
  $("user-input").value = userId;
  setStatus(`Loading user ${userId}…`);
  try {
    const [user, recs] = await Promise.all([api(`/users/${userId}`), api(`/recommend/${userId}?k=10`)]);
    $("user-title").textContent = user.known
      ? `User ${userId} (${user.ratedCount} ratings)`
      : `User ${userId} (new user: cold start)`;
    const list = $("recommendations");
    list.replaceChildren(...recs.items.map((m) => {
      const extra = document.createElement("span");
      extra.append(text("span", m.score.toFixed(3), "score"), channelLabel(m.channel));
      return movieItem(m, extra);
    }));
    $("recall-summary").textContent = `ranked ${recs.candidates} recalled movies: ` +
      Object.entries(recs.channels || {}).map(([c, n]) => `${c} ${n}`).join(", ");
    const history = $("history");
    history.replaceChildren(...user.history.map((m) => movieItem(m, text("span", `★ ${m.rating}`, "rating"))));
    if (!user.history.length) history.replaceChildren(text("li", "No ratings yet.", "muted"));
    $("user-view").hidden = false;
    setStatus("");
  } catch (err) {
    $("user-view").hidden = true;
    setStatus(`Could not load user ${userId}: ${err.message}`, true);
  }
}

async function showMovie(movieId) {
  $("home-view").hidden = true;
  $("user-view").hidden = true;
  setStatus(`Loading movie ${movieId}…`);
  try {
    const [movie, similar] = await Promise.all([
      api(`/movies/${movieId}?neighbours=10`), api(`/getsimilarmovie?movieId=${movieId}&size=10&model=emb`)]);
    $("similar").replaceChildren(...similar.map(movieCard));
    $("movie-title").textContent = movie.title || `movie ${movie.movieId}`;
    const f = movie.features || {};
    $("movie-meta").textContent = [
      (movie.genres || []).join(", "),
      movie.year ? `year ${movie.year}` : null,
      f.movieRatingCount != null ? `${f.movieRatingCount} ratings` : null,
      f.movieAvgRating != null ? `average ${Number(f.movieAvgRating).toFixed(2)}` : null,
    ].filter(Boolean).join(" · ");
    $("neighbours").replaceChildren(...movie.neighbours.map(
      (m) => movieItem(m, text("span", m.similarity.toFixed(3), "score"))));
    $("movie-view").hidden = false;
    setStatus("");
  } catch (err) {
    $("movie-view").hidden = true;
    setStatus(`Could not load movie ${movieId}: ${err.message}`, true);
  }
}

function route() {
  const m = location.hash.match(/^#\/(user|movie)\/(-?\d+)$/);
  if (!m) {
    showHome();
    return;
  }
  if (m[1] === "user") showUser(m[2]);
  else showMovie(m[2]);
}

$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("user-input").value.trim();
  if (/^-?\d+$/.test(id)) location.hash = `#/user/${id}`;
});

api("/info").then((info) => {
  $("versions").textContent = `model ${info.modelVersion} · store v${info.storeVersion}`;
  const examples = $("examples");
  examples.replaceChildren(text("span", "Examples: ", "muted"), ...(info.exampleUsers || []).map((id) => {
    const a = text("a", String(id));
    a.href = `#/user/${id}`;
    return a;
  }));
}).catch(() => {});

window.addEventListener("hashchange", route);
route();
