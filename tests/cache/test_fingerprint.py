def test_dataset_fingerprint_hashes_the_files_the_read_options_pick(real_root):
    """Reader options that choose files (VQA questions_file/annotations_file) choose the hashed files."""
    from madcache.cache.fingerprint import dataset_fingerprint

    options = {
        "questions_file": "multimodal_testdata/v2_OpenEnded_mscoco_train2014_questions.json",
        "annotations_file": "multimodal_testdata/v2_mscoco_train2014_annotations.json",
    }
    part = dataset_fingerprint("vqa", real_root / "vqa_v2", "train", options)
    assert sorted(part["files"]) == sorted(options.values())
