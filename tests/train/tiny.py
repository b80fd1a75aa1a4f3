"""Tiny settings shared by the pipeline tests."""

TINY_DATA = dict(num_identities=12, num_test_identities=8, num_cameras=3, num_distractors=3,
                 image_size=(64, 32))

# Synthetic visible-infrared data (SYSU-MM01 layout) of the GUR tests: every identity in every
# camera, so that each camera and each modality clusters at these sizes.
TINY_VI_DATA = dict(seed=5, num_visible_cameras=3, num_infrared_cameras=2, num_identities=10, num_test_identities=6,
                    visible_cameras_per_identity=(3, 3), infrared_cameras_per_identity=(2, 2),
                    images_per_camera=(3, 3), image_size=(64, 32))


def tiny_argv(output, *extra):
    """Options of a 1-round run that takes seconds: timm's 0.2M-parameter test_convnext at 64x32
    with the demo's AIBN/TNorm placement, 1 epoch per stage, no evaluation between rounds."""
    return ["--preset", "demo", "--output", str(output), "--model", "test_convnext", "--eval-every", "0",
            "--rounds", "1", "--intra-epochs", "1", "--inter-epochs", "1", "--intra-clusters", "8",
            "--inter-clusters", "14", "--intra-batch-size", "8", "--batch-size", "16", "--num-instances", "4",
            "--test-batch-size", "64", "--threads", "1", "--k1", "6", "--k2", "3", "--no-progress", "--no-plots",
            *extra]


def interrupt_step(monkeypatch, trainer_cls, at: int):
    """Make ``trainer_cls.step`` raise KeyboardInterrupt on its ``at``-th call (a Ctrl-C inside a
    run); returns the real ``step`` to put back before resuming."""
    real_step, calls = trainer_cls.step, []

    def interrupted(self, position):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real_step(self, position)

    monkeypatch.setattr(trainer_cls, "step", interrupted)
    return real_step
