import logging


def test_tied_weight_checkpoint_warning_is_dropped_and_others_kept(caplog):
    import medm2g_core.training.loop  # noqa: F401  (installs the filter)

    logger = logging.getLogger("accelerate.utils.other")
    with caplog.at_level(logging.WARNING, logger="accelerate.utils.other"):
        logger.warning("Removed shared tensor {'parts.shared.layers.0.to_q.weight'} while saving. This should be OK")
        logger.warning("something else went wrong")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["something else went wrong"]
