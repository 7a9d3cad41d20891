import pytest

from infaas.settings import SettingsError, load_settings


def test_defaults_and_environment_precedence(tmp_path):
    config = tmp_path / "infaas.toml"
    config.write_text('[kafka]\nbootstrap = "broker:1"\n[cassandra]\nport = 9000\nhosts = ["a", "b"]\n')
    settings = load_settings(config, environ={"INFAAS_KAFKA_BOOTSTRAP": "env:2"})
    assert settings.kafka_bootstrap == "env:2"  # environment beats file
    assert settings.cassandra_port == 9000  # file beats default
    assert settings.cassandra_hosts == ("a", "b")
    assert settings.keyspace == "infaas"


def test_environment_values_are_coerced():
    settings = load_settings(environ={"INFAAS_CASSANDRA_HOSTS": "h1, h2", "INFAAS_VARIANT_PARTITIONS": "8"})
    assert settings.cassandra_hosts == ("h1", "h2")
    assert settings.variant_partitions == 8


@pytest.mark.parametrize("env, message", [
    ({"INFAAS_CASSANDRA_PORT": "ninety"}, "'cassandra_port': 'ninety' is not a valid int"),
    ({"INFAAS_KAFKA_PORT": "70000"}, "not a TCP port"),
    ({"INFAAS_KEYSPACE": "bad-name"}, "not a valid CQL keyspace"),
    ({"INFAAS_REPOSITORY_URL": "ftp://x"}, "must be file://PATH or s3://BUCKET"),
    ({"INFAAS_VARIANT_PARTITIONS": "0"}, "'variant_partitions' must be at least 1"),
    ({"INFAAS_KAFKA_PORT": "9042"}, "ports must differ"),
    ({"INFAAS_MAX_INPUT_MB": "20", "INFAAS_MAX_MESSAGE_MB": "20"}, "need 1 <= max_input_mb < max_message_mb"),
    ({"INFAAS_TOPIC_REPLICATION_FACTOR": "0"}, "'topic_replication_factor' must be at least 1"),
    ({"INFAAS_TOPIC_REPLICATION_FACTOR": "3", "INFAAS_MIN_INSYNC_REPLICAS": "4"}, "no write could succeed"),
    ({"INFAAS_CLIENT_THROTTLE_K": "0.5"}, "'client_throttle_k' must be 0 \\(off\\) or at least 1"),
])
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=env)


def test_unknown_key_in_file_is_refused(tmp_path):
    config = tmp_path / "infaas.toml"
    config.write_text("kafka_bootstrapp = 'typo:1'\n")
    with pytest.raises(SettingsError, match="unknown setting.*kafka_bootstrapp"):
        load_settings(config, environ={})


def test_malformed_file_is_a_clear_error(tmp_path):
    config = tmp_path / "infaas.toml"
    config.write_text("this is = = not toml")
    with pytest.raises(SettingsError, match="config file"):
        load_settings(config, environ={})


def test_client_config_passes_security_options_through():
    settings = load_settings(environ={"INFAAS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                      "INFAAS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                      "INFAAS_KAFKA_SASL_USERNAME": "app", "INFAAS_KAFKA_SASL_PASSWORD": "pw"})
    conf = settings.kafka_client_config()
    assert conf["security.protocol"] == "SASL_PLAINTEXT"
    assert conf["sasl.username"] == "app" and conf["sasl.password"] == "pw"
    assert "pw" not in repr(settings)  # secrets stay out of logs


def test_topic_names():
    settings = load_settings(environ={"INFAAS_TOPIC_PREFIX": "p"})
    assert settings.topic("queries") == "p.queries"
    assert settings.results_topic("demo") == "p.results.demo"
    assert settings.variant_topic("mlp:ort-int8:cpu-2t:b8") == "p.variant.mlp.ort-int8.cpu-2t.b8"


@pytest.mark.parametrize("env, message", [
    ({"INFAAS_SCALING_POLICY": "greedy"}, "'scaling_policy': 'greedy' is not one of infaas, static, replica-only"),
    ({"INFAAS_SCALER_BACKEND": "nomad"}, "'scaler_backend'"),
    ({"INFAAS_MIN_WORKERS": "5", "INFAAS_MAX_WORKERS": "2"}, "need 1 <= min_workers <= max_workers"),
    ({"INFAAS_OFFLINE_CPU_THRESHOLD": "2"}, "'offline_cpu_threshold' 0..1"),
])
def test_service_tunables_are_checked_settings(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=env)


def test_the_policy_names_are_the_policies_the_code_knows():
    from infaas.policies import POLICIES
    from infaas.settings import POLICY_NAMES
    assert set(POLICY_NAMES) == set(POLICIES)
