"""A SparrowRecSys-style front-end in headless Chromium: a small page of our own, served with ``--webroot``,
calls the compat routes with relative URLs the way a jQuery page does (``$.getJSON``: a GET, JSON parsed) and
renders movie cards; the cards must show what the API answers."""

from __future__ import annotations

from fastapi.testclient import TestClient

from deepcrossing.serving.app import create_app
from deepcrossing.serving.settings import ServingSettings

# What SparrowRecSys's pages do, without jQuery (nothing is fetched from the network): getJSON is $.getJSON.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>compat</title></head>
<body>
<h2>Genre</h2><div id="genre" class="row"></div>
<h2>For you</h2><div id="foryou" class="row"></div>
<h2>Similar</h2><div id="similar" class="row"></div>
<h2>Movie</h2><div id="movie"></div>
<h2>User</h2><div id="user"></div>
<script>
function getJSON(url, done) {
  var xhr = new XMLHttpRequest();
  xhr.open("GET", url);
  xhr.onload = function () { done(JSON.parse(xhr.responseText)); };
  xhr.send();
}
function card(movie) {
  var div = document.createElement("div");
  div.className = "card";
  div.setAttribute("data-id", movie.movieId);
  var title = document.createElement("span");
  title.className = "title";
  title.textContent = movie.title;
  var rating = document.createElement("span");
  rating.className = "rating";
  rating.textContent = movie.averageRating.toPrecision(2);
  var year = document.createElement("span");
  year.className = "year";
  year.textContent = movie.releaseYear;
  div.append(title, " ", rating, " ", year);
  return div;
}
function row(id, movies) {
  var box = document.getElementById(id);
  movies.forEach(function (m) { box.appendChild(card(m)); });
  box.setAttribute("data-done", "1");
}
var q = new URLSearchParams(location.search);
getJSON("getrecommendation?genre=" + encodeURIComponent(q.get("genre")) + "&size=8&sortby=rating",
        function (movies) { row("genre", movies); });
getJSON("getrecforyou?id=" + q.get("user") + "&size=8&model=emb", function (movies) { row("foryou", movies); });
getJSON("getsimilarmovie?movieId=" + q.get("movie") + "&size=8&model=emb",
        function (movies) { row("similar", movies); });
getJSON("getmovie?id=" + q.get("movie"), function (movie) {
  var box = document.getElementById("movie");
  box.appendChild(card(movie));
  var imdb = document.createElement("a");
  imdb.id = "imdb";
  imdb.href = "https://www.imdb.com/title/tt" + movie.imdbId;
  imdb.textContent = movie.imdbId;
  box.appendChild(imdb);
  box.setAttribute("data-done", "1");
});
getJSON("getuser?id=" + q.get("user"), function (user) {
  var box = document.getElementById("user");
  box.textContent = "User " + user.userId + ": " + user.ratingCount + " ratings, average " +
                    user.averageRating.toPrecision(2);
  box.setAttribute("data-done", "1");
});
</script>
</body></html>
"""


def test_a_sparrowrecsys_style_page_renders_the_compat_answers(browser, models, sqlite_url, server_thread,
                                                               tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "index.html").write_text(PAGE)
    settings = ServingSettings(models["root"] / "m0", sqlite_url, webroot=tmp_path)
    with TestClient(create_app(settings)) as client:   # what the page must show, from the API itself
        user_id = client.get("/info").json()["exampleUsers"][0]
        movie_id = client.get(f"/getrecforyou?id={user_id}&size=1").json()[0]["movieId"]
        movie = client.get(f"/getmovie?id={movie_id}").json()
        genre = movie["genres"][0]
        expected = {
            "genre": client.get(f"/getrecommendation?genre={genre}&size=8&sortby=rating").json(),
            "foryou": client.get(f"/getrecforyou?id={user_id}&size=8&model=emb").json(),
            "similar": client.get(f"/getsimilarmovie?movieId={movie_id}&size=8&model=emb").json(),
        }
        user = client.get(f"/getuser?id={user_id}").json()
    assert all(len(v) == 8 for v in expected.values())
    with server_thread(create_app(settings)) as server:
        browser.get(f"{server.url}/?genre={genre}&user={user_id}&movie={movie_id}")
        wait = WebDriverWait(browser, 20)
        for box in ("genre", "foryou", "similar", "movie", "user"):
            wait.until(lambda d, box=box: d.find_element(By.ID, box).get_attribute("data-done") == "1")
        for box, movies in expected.items():
            cards = browser.find_elements(By.CSS_SELECTOR, f"#{box} .card")
            assert [c.find_element(By.CLASS_NAME, "title").text for c in cards] == [m["title"] for m in movies]
            assert [int(c.get_attribute("data-id")) for c in cards] == [m["movieId"] for m in movies]
            for c, m in zip(cards, movies):
                shown = float(c.find_element(By.CLASS_NAME, "rating").text)   # toPrecision(2) of averageRating
                assert abs(shown - m["averageRating"]) <= 0.05 + 1e-9
                assert c.find_element(By.CLASS_NAME, "year").text == str(m["releaseYear"])
        shown_movie = browser.find_element(By.CSS_SELECTOR, "#movie .card .title").text
        assert shown_movie == movie["title"] and not shown_movie.endswith(f"({movie['releaseYear']})")
        assert browser.find_element(By.ID, "imdb").text == (movie["imdbId"] or "")
        text = browser.find_element(By.ID, "user").text
        assert text.startswith(f"User {user_id}: {user['ratingCount']} ratings, average ")
        assert abs(float(text.rsplit(" ", 1)[1]) - user["averageRating"]) <= 0.05 + 1e-9
