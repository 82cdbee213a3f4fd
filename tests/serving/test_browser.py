"""The web page in headless Chromium: what a person sees (history, recommendations, the movie page)."""

from __future__ import annotations


from deepcrossing.serving.app import create_app
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.settings import ServingSettings


def test_page_shows_history_recommendations_and_movie(browser, models, sqlite_url, server_thread):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    model = models["root"] / "m0"
    expected = Engine.open(model, sqlite_url)
    recs = expected.recommend(1, k=10)["items"]
    user = expected.user_info(1)
    app = create_app(ServingSettings(model, sqlite_url))
    with server_thread(app) as server:
        wait = WebDriverWait(browser, 20)
        browser.get(server.url + "/")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#examples a")))
        box = browser.find_element(By.ID, "user-input")
        box.clear()
        box.send_keys("1")
        browser.find_element(By.ID, "user-go").click()
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#recommendations li")))
        assert browser.find_element(By.ID, "user-title").text.startswith("User 1 (")
        shown = [li.find_element(By.CSS_SELECTOR, "a.title").text
                 for li in browser.find_elements(By.CSS_SELECTOR, "#recommendations li")]
        assert shown == [r["title"] for r in recs]
        first = browser.find_elements(By.CSS_SELECTOR, "#recommendations li")[0].text
        assert f"{recs[0]['score']:.3f}" in first and recs[0]["genres"][0] in first
        history = [li.find_element(By.CSS_SELECTOR, "a.title").text
                   for li in browser.find_elements(By.CSS_SELECTOR, "#history li")]
        assert history == [h["title"] for h in user["history"]]

        # follow the first recommendation to its movie page: title, facts, similar movies
        browser.find_element(By.CSS_SELECTOR, "#recommendations li a.title").click()
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#neighbours li")))
        assert browser.find_element(By.ID, "movie-title").text == recs[0]["title"]
        assert "ratings" in browser.find_element(By.ID, "movie-meta").text
        neighbours = browser.find_elements(By.CSS_SELECTOR, "#neighbours li a.title")
        movie = expected.movie_info(recs[0]["movieId"])
        assert [a.text for a in neighbours] == [n["title"] for n in movie["neighbours"]]

        # an unknown user gets a cold-start list, not an error
        browser.get(server.url + "/ui/#/user/99999999")
        wait.until(ec.text_to_be_present_in_element((By.ID, "user-title"), "cold start"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#recommendations li")) == 10
        assert browser.find_element(By.CSS_SELECTOR, "#history li").text == "No ratings yet."
    expected.store.close()


def test_page_shows_genre_rows_channels_and_similar_movies(browser, models, synth_data, server_thread,
                                                           tmp_path_factory):
    """With a store published with the emb vectors: the home page's genre collections are the compat
    /getrecommendation lists, each recommendation shows the channel that recalled it, and the movie page shows
    /getsimilarmovie's cards."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from deepcrossing.serving.publish import publish_for_model

    model = models["root"] / "m0"
    url = f"sqlite:///{tmp_path_factory.mktemp('page_emb') / 'f.db'}"
    publish_for_model(model, synth_data["raw"], url, keep_previous_s=0)
    expected = Engine.open(model, url)
    user = expected.state.snapshot.meta["example_users"][0]
    recs = expected.recommend(user, k=10)["items"]
    assert len({r["channel"] for r in recs}) >= 1
    app = create_app(ServingSettings(model, url))
    with server_thread(app) as server:
        genres = httpx.get(f"{server.url}/info").json()["genres"][:6]
        first = httpx.get(f"{server.url}/getrecommendation",
                          params={"genre": genres[0], "size": 8, "sortby": "rating"}).json()
        wait = WebDriverWait(browser, 20)
        browser.get(server.url + "/ui/#/")
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#genre-rows .genre-row .card")))
        rows = browser.find_elements(By.CSS_SELECTOR, "#genre-rows .genre-row")
        assert [r.find_element(By.TAG_NAME, "h3").text for r in rows] == genres
        assert [a.text for a in rows[0].find_elements(By.CSS_SELECTOR, ".card a.title")] == \
            [m["title"] for m in first]

        browser.get(server.url + f"/ui/#/user/{user}")
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#recommendations li .channel")))
        labels = [s.text for s in browser.find_elements(By.CSS_SELECTOR, "#recommendations li .channel")]
        assert labels == [r["channel"] for r in recs]
        assert "emb" in browser.find_element(By.ID, "recall-summary").text
        assert browser.find_element(By.ID, "home-view").is_displayed() is False

        movie = recs[0]["movieId"]
        similar = httpx.get(f"{server.url}/getsimilarmovie", params={"movieId": movie, "size": 10}).json()
        browser.get(server.url + f"/ui/#/movie/{movie}")
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#similar .card")))
        assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#similar .card a.title")] == \
            [m["title"] for m in similar]
    expected.store.close()
