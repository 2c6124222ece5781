import pytest

from trainers.config import ConfigError, TrialConfig, load_trial_config


def write(tmp_path, text):
    p = tmp_path / "trial.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_key_line_and_suggestion(tmp_path):
    p = write(tmp_path, "dataset:\n  name: synthetic\n  prest: affwild2_like\n")
    with pytest.raises(ConfigError) as e:
        load_trial_config(p)
    msg = str(e.value)
    assert msg == f'{p}:3: dataset.prest: unknown key \'prest\' (did you mean "preset"?)'
    assert "\n" not in msg


def test_bad_list_item_names_its_own_line(tmp_path):
    # the trial YAML and the sweep YAML share one key-line walker (trainers.config_errors), list items included
    p = write(tmp_path, "seed: 0\ndataset:\n  drop_tasks:\n    - va\n    - bogus\n")
    with pytest.raises(ConfigError) as e:
        load_trial_config(p)
    assert str(e.value).startswith(f"{p}:5: dataset.drop_tasks.1: ")


def test_a_key_written_twice_is_named_where_its_kept_value_is(tmp_path):
    p = write(tmp_path, "seed: 0\nepochs: 3\nepochs: many\n")  # yaml.safe_load keeps the last
    with pytest.raises(ConfigError, match=r"trial.yaml:3: epochs: Input should be a valid integer"):
        load_trial_config(p)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "seed: 0\nepochs: many\n")
    with pytest.raises(ConfigError, match=r"trial.yaml:2: epochs: Input should be a valid integer"):
        load_trial_config(p)


def test_unknown_method_and_option(tmp_path):
    with pytest.raises(ConfigError, match=r'method.name: unknown method \'focall\' \(did you mean "focal"\?\)'):
        load_trial_config(write(tmp_path, "method: {name: focall}\n"))
    with pytest.raises(ConfigError, match=r"method.gamam: unknown option of method 'focal'"):
        load_trial_config(write(tmp_path, "method: {name: focal, gamam: 1}\n"))
    with pytest.raises(ConfigError, match=r"method.cost"):
        load_trial_config(write(tmp_path, "method: {name: focal, cost: circumplx}\n"))


def test_bad_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"trial.yaml:3: not valid YAML"):
        load_trial_config(write(tmp_path, "seed: 0\nepochs: 1\n lr: 2\nwarmup_epochs: 1\n"))


def test_trial_id_is_content_addressed():
    a = TrialConfig.model_validate({"seed": 1, "method": {"name": "focal", "cost": "uniform"}})
    b = TrialConfig.model_validate({"method": {"cost": "uniform", "name": "focal"}, "seed": 1})
    assert a.trial_id == b.trial_id
    assert a.trial_id != TrialConfig.model_validate({"seed": 2, "method": {"cost": "uniform"}}).trial_id
    # placement and paths do not change what the trial is
    c = TrialConfig.model_validate({"seed": 1, "method": {"cost": "uniform"}, "device": "cuda", "num_workers": 4})
    assert c.trial_id == a.trial_id


def test_method_default_cost_is_resolved_into_the_id():
    ot = TrialConfig.model_validate({"method": {"name": "ot"}})
    assert ot.method.cost == "circumplex"
    explicit = TrialConfig.model_validate({"method": {"name": "ot", "cost": "circumplex"}})
    assert ot.trial_id == explicit.trial_id
