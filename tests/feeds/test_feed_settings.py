"""Named feeds in the configuration: each its URL, key, prefix, state and schedule."""

from __future__ import annotations

import pytest

from spark_relay.cli import main
from spark_relay.errors import ConfigError
from spark_relay.feeds import feed_names, feed_settings, merged_feeds
from spark_relay.settings import describe, load_settings, unknown_variables

TOML = """
topic_prefix = "spark"
state_dir = "/var/lib/relay"
update_interval = 15

[feed.north]
api_url = "http://127.0.0.1:9001"
update_interval = 5

[feed.south]
api_url = "http://127.0.0.1:9002"
api_key_file = "{key_file}"
topic_prefix = "mls.south"
purge_at = "04:30"
"""


@pytest.fixture
def config(tmp_path):
    key_file = tmp_path / "south.key"
    key_file.write_text("south-secret-key\n")
    path = tmp_path / "relay.toml"
    path.write_text(TOML.format(key_file=key_file))
    return path


def test_a_named_feed_has_its_url_key_prefix_state_and_schedule(config):
    settings = load_settings(config, environ={"SPARK_RELAY_FEED_NORTH_API_KEY": "north-key"})
    assert feed_names(settings) == ["north", "south"]
    north = feed_settings(settings, "north")
    assert north.feed == "north"
    assert north.api_url == "http://127.0.0.1:9001"
    assert north.api_key.reveal() == "north-key"
    assert north.topic_prefix == "spark.north"
    assert north.topic("listings") == "spark.north.listings"
    assert north.state_dir == "/var/lib/relay/feeds/north"
    assert north.update_interval == 5.0
    south = feed_settings(settings, "south")
    assert south.api_key.reveal() == "south-secret-key"  # from the file, trimmed
    assert south.topic_prefix == "mls.south"
    assert south.purge_at == "04:30"
    assert south.update_interval == 15.0  # what a feed does not set is the settings' own
    # the unnamed feed is the settings as they are
    unnamed = feed_settings(settings)
    assert unnamed == settings and unnamed.topic_prefix == "spark" and unnamed.feed == ""
    assert "south-secret-key" not in repr(south) and "north-key" not in str(describe(settings))


def test_feeds_from_the_environment():
    env = {
        "SPARK_RELAY_FEEDS": "a,b_2",
        "SPARK_RELAY_FEED_A_API_URL": "http://127.0.0.1:9001",
        "SPARK_RELAY_FEED_A_API_KEY": "key-a",
        "SPARK_RELAY_FEED_B_2_API_URL": "http://127.0.0.1:9002",
        "SPARK_RELAY_FEED_B_2_ACCOUNTS_INTERVAL": "120",
        "SPARK_RELAY_FEED": "b_2",
    }
    settings = load_settings(environ=env)
    assert feed_names(settings) == ["a", "b_2"]
    b = feed_settings(settings)
    assert (b.feed, b.api_url, b.accounts_interval, b.topic_prefix) == (
        "b_2",
        "http://127.0.0.1:9002",
        120.0,
        "spark.b_2",
    )
    assert unknown_variables(env) == []
    typo = unknown_variables({**env, "SPARK_RELAY_FEED_A_API_ULR": "x"})
    assert len(typo) == 1 and "SPARK_RELAY_FEED_A_API_URL" in typo[0]


def test_a_key_in_the_toml_file_is_refused(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text('[feed.a]\napi_key = "secret"\n')
    with pytest.raises(ConfigError, match="SPARK_RELAY_FEED_A_API_KEY") as raised:
        load_settings(path, environ={})
    assert "secret" not in str(raised.value).replace('secret"', "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[feed.A]\napi_url = "http://x"\n', "a feed name is lower-case"),
        ('[feed.a]\nlog_level = "DEBUG"\n', "log_level: not a feed setting"),
        ('[feed.a]\napi_url = "x"\n', r"feed a: api_url: expected an http\(s\)://"),
    ],
)
def test_a_wrong_feed_table_names_the_setting(tmp_path, text, message):
    path = tmp_path / "relay.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        feed_settings(load_settings(path, environ={}), "a")


def test_an_unknown_feed_is_a_config_error_naming_the_configured_ones(config):
    settings = load_settings(config, environ={})
    with pytest.raises(ConfigError, match=r"no feed named 'west'.*configured feeds: north, south"):
        feed_settings(settings, "west")
    with pytest.raises(ConfigError, match="configured feeds: north, south"):
        merged_feeds(load_settings(config, environ={}, sink_feeds="north,west"))
    assert [f.feed for f in merged_feeds(load_settings(config, environ={}, sink_feeds="all"))] == [
        "north",
        "south",
    ]


@pytest.mark.parametrize("command", ["run", "snapshot", "update", "accounts", "purge"])
def test_poll_with_an_unknown_feed_exits_2_naming_the_feeds(config, command, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), "poll", command, "--feed", "west"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "'west'" in err and "configured feeds: north, south" in err


def test_a_flag_ranks_above_the_feeds_table(config, monkeypatch):
    from spark_relay.app import App

    app = App(str(config), {}, False)
    assert app.settings(feed="north").update_interval == 5.0
    assert app.settings(feed="north", update_interval="2").update_interval == 2.0


def test_a_sink_keyed_by_key_alone_refuses_to_merge_feeds(config):
    from consumers.postgres import PostgresSink
    from consumers.runner import Runner

    class OneFeed:
        name = "onefeed"
        resources = ("listings",)

    merged = load_settings(config, environ={}, sink_feeds="north,south")
    with pytest.raises(ConfigError, match="sink onefeed keeps one feed"):
        Runner(OneFeed(), merged)
    one = load_settings(config, environ={}, sink_feeds="north")
    assert Runner(OneFeed(), one).sources == ("spark.north.listings",)
    assert len(Runner(PostgresSink(), merged).sources) == 6
    # two feeds on one prefix would be one set of topics: refused
    same = load_settings(
        config, environ={"SPARK_RELAY_FEED_SOUTH_TOPIC_PREFIX": "spark.north"}, sink_feeds="all"
    )
    with pytest.raises(ConfigError, match="share the topic spark.north.listings"):
        Runner(PostgresSink(), same)


def test_a_feed_without_its_key_names_its_variable(config):
    north = feed_settings(load_settings(config, environ={}), "north")
    with pytest.raises(
        ConfigError, match=r"SPARK_RELAY_FEED_NORTH_API_KEY \(feed north\) is not set"
    ):
        north.require("api_key")
