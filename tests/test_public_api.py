import serdab

EXPECTED = {
    "PLANNERS",
    "Cluster",
    "ClusterError",
    "ConfigError",
    "CostModel",
    "InfeasibleError",
    "Placement",
    "PlanError",
    "PlanRequest",
    "PolicyError",
    "Workload",
    "get_planner",
    "load_cluster",
    "parse_policy",
    "plan_model",
    "simulate",
    "Client",
    "ModelService",
    "ServeConfig",
    "make_engine",
    "ServeError",
    "ZOO",
    "Block",
    "BlockProfile",
    "Chain",
    "CutError",
    "CutOutOfRangeError",
    "ImageSetError",
    "InputShapeError",
    "LeakageReport",
    "ModelError",
    "ModelNotFoundError",
    "NamedChain",
    "NotACleanCutError",
    "NotOnnxError",
    "Profile",
    "SerdabError",
    "StageSpec",
    "__version__",
    "build_module",
    "default_images",
    "extract_stage",
    "load_image_dir",
    "load_model",
    "measure_leakage",
    "open_chain",
    "profile_chain",
    "stage_ranges",
    "write_stages",
}


def test_public_api_is_pinned() -> None:
    assert set(serdab.__all__) == EXPECTED
    for name in serdab.__all__:
        assert hasattr(serdab, name), name


def test_every_user_error_is_a_serdab_error() -> None:
    for name in (
        "ModelNotFoundError",
        "NotOnnxError",
        "InputShapeError",
        "CutOutOfRangeError",
        "NotACleanCutError",
        "ImageSetError",
        "ClusterError",
        "ConfigError",
        "PolicyError",
        "PlanError",
        "InfeasibleError",
    ):
        assert issubclass(getattr(serdab, name), serdab.SerdabError)
