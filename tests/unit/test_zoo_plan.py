"""Which variants a zoo registers per model: the zoo's choice where the settings leave it open."""

from infaas.registration.zoo import model_settings, zoos
from infaas.settings import load_settings


def _entry(zoo, name):
    return next(entry for entry in zoo.models if entry.name == name)


def test_the_mnist1d_zoo_narrows_batch_sizes_and_optimizers_left_at_their_defaults():
    settings = load_settings(environ={})
    zoo = zoos()["mnist1d"]
    small = model_settings(settings, zoo, _entry(zoo, "cnn-small"))
    assert small.variant_batch_sizes == (1, 8, 32) != settings.variant_batch_sizes
    assert small.variant_optimizers == ()  # every optimizer: its TVM variants exercise TVM's convolutions
    assert "tvm" not in model_settings(settings, zoo, _entry(zoo, "cnn")).variant_optimizers
    largest = model_settings(settings, zoo, _entry(zoo, "cnn-large-tta")).variant_optimizers
    assert "ort-fp32" in largest and not {"tvm", "ort-int8"} & set(largest)


def test_settings_a_user_chose_are_kept():
    settings = load_settings(environ={"INFAAS_VARIANT_BATCH_SIZES": "1,4", "INFAAS_VARIANT_OPTIMIZERS": "tvm"})
    zoo = zoos()["mnist1d"]
    chosen = model_settings(settings, zoo, _entry(zoo, "cnn-large-tta"))
    assert (chosen.variant_batch_sizes, chosen.variant_optimizers) == ((1, 4), ("tvm",))


def test_the_digits_fixture_zoo_registers_what_the_settings_say():
    settings = load_settings(environ={})
    zoo = zoos()["digits"]
    assert all(model_settings(settings, zoo, entry) == settings for entry in zoo.models)
