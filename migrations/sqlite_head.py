# ruff: noqa: E501  (each statement is sqlite_master's text to the byte, one line each)
"""The SQLite schema every migration up to REVISION makes, as statements to run in order on an
empty database: a new SQLite index is created from them and stamped at REVISION, without
Alembic's machinery (0.5 s a new database). tests/test_migrations.py holds them to what running
the migrations makes (same sqlite_master) and prints the new text when a migration changes it;
layerindex.index.database runs the migrations instead whenever REVISION is not the head revision.
"""

REVISION = "0008_runs_deferred"

STATEMENTS = (
    "CREATE TABLE alembic_version (\n\tversion_num VARCHAR(32) NOT NULL, \n\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)",
    "CREATE TABLE repositories (\n\tid INTEGER NOT NULL, \n\tregistry TEXT NOT NULL, \n\tname TEXT NOT NULL, \n\tCONSTRAINT pk_repositories PRIMARY KEY (id), \n\tCONSTRAINT uq_repositories_registry UNIQUE (registry, name)\n)",
    "CREATE TABLE tags (\n\trepository_id INTEGER NOT NULL, \n\ttag TEXT NOT NULL, \n\tdigest TEXT NOT NULL, \n\tfirst_seen DATETIME NOT NULL, \n\tlast_seen DATETIME NOT NULL, \n\tCONSTRAINT pk_tags PRIMARY KEY (repository_id, tag, digest), \n\tCONSTRAINT fk_tags_repository_id_repositories FOREIGN KEY(repository_id) REFERENCES repositories (id)\n)",
    "CREATE TABLE images (\n\tid INTEGER NOT NULL, \n\trepository_id INTEGER NOT NULL, \n\tdigest TEXT NOT NULL, \n\treference TEXT NOT NULL, \n\tindex_digest TEXT, \n\tmedia_type TEXT NOT NULL, \n\tplatform TEXT NOT NULL, \n\tconfig_digest TEXT NOT NULL, \n\tcreated TEXT, \n\tmanifest TEXT NOT NULL, \n\tconfig TEXT NOT NULL, \n\tindexed_at DATETIME, \n\tCONSTRAINT pk_images PRIMARY KEY (id), \n\tCONSTRAINT fk_images_repository_id_repositories FOREIGN KEY(repository_id) REFERENCES repositories (id), \n\tCONSTRAINT uq_images_repository_id UNIQUE (repository_id, digest)\n)",
    "CREATE TABLE diffs (\n\tid INTEGER NOT NULL, \n\tdiff_id TEXT NOT NULL, \n\tsize BIGINT NOT NULL, \n\tentry_count INTEGER NOT NULL, \n\tindexed_at DATETIME NOT NULL, \n\tCONSTRAINT pk_diffs PRIMARY KEY (id), \n\tCONSTRAINT uq_diffs_diff_id UNIQUE (diff_id)\n)",
    "CREATE TABLE layers (\n\tid INTEGER NOT NULL, \n\tdigest TEXT NOT NULL, \n\tdiff_id TEXT, \n\tmedia_type TEXT NOT NULL, \n\tsize BIGINT NOT NULL, \n\tcompression TEXT, \n\tdiff_ref INTEGER, \n\tskip_reason TEXT, \n\tlast_error TEXT, \n\tattempts INTEGER NOT NULL, \n\tlast_attempt DATETIME, lease_owner TEXT, lease_until DATETIME, \n\tCONSTRAINT pk_layers PRIMARY KEY (id), \n\tCONSTRAINT fk_layers_diff_ref_diffs FOREIGN KEY(diff_ref) REFERENCES diffs (id), \n\tCONSTRAINT uq_layers_digest UNIQUE (digest)\n)",
    "CREATE INDEX ix_layers_diff_id ON layers (diff_id)",
    "CREATE TABLE image_layers (\n\timage_id INTEGER NOT NULL, \n\tposition INTEGER NOT NULL, \n\tlayer_id INTEGER NOT NULL, \n\tCONSTRAINT pk_image_layers PRIMARY KEY (image_id, position), \n\tCONSTRAINT fk_image_layers_image_id_images FOREIGN KEY(image_id) REFERENCES images (id), \n\tCONSTRAINT fk_image_layers_layer_id_layers FOREIGN KEY(layer_id) REFERENCES layers (id)\n)",
    "CREATE INDEX ix_image_layers_layer_id ON image_layers (layer_id)",
    "CREATE TABLE dirs (\n\tid INTEGER NOT NULL, \n\tpath TEXT NOT NULL, \n\tCONSTRAINT pk_dirs PRIMARY KEY (id), \n\tCONSTRAINT uq_dirs_path UNIQUE (path)\n)",
    "CREATE TABLE names (\n\tid INTEGER NOT NULL, \n\tname TEXT NOT NULL, \n\tCONSTRAINT pk_names PRIMARY KEY (id), \n\tCONSTRAINT uq_names_name UNIQUE (name)\n)",
    "CREATE VIRTUAL TABLE dirs_fts USING fts5(path, content='dirs', content_rowid='id', tokenize='trigram case_sensitive 1', detail=none, columnsize=0)",
    "CREATE TRIGGER dirs_fts_delete AFTER DELETE ON dirs BEGIN INSERT INTO dirs_fts(dirs_fts, rowid, path) VALUES ('delete', old.id, old.path); END",
    "CREATE TRIGGER dirs_fts_update AFTER UPDATE ON dirs BEGIN INSERT INTO dirs_fts(dirs_fts, rowid, path) VALUES ('delete', old.id, old.path); INSERT INTO dirs_fts(rowid, path) VALUES (new.id, new.path); END",
    "CREATE VIRTUAL TABLE names_fts USING fts5(name, content='names', content_rowid='id', tokenize='trigram case_sensitive 1', detail=none, columnsize=0)",
    "CREATE TRIGGER names_fts_delete AFTER DELETE ON names BEGIN INSERT INTO names_fts(names_fts, rowid, name) VALUES ('delete', old.id, old.name); END",
    "CREATE TRIGGER names_fts_update AFTER UPDATE ON names BEGIN INSERT INTO names_fts(names_fts, rowid, name) VALUES ('delete', old.id, old.name); INSERT INTO names_fts(rowid, name) VALUES (new.id, new.name); END",
    "CREATE TABLE runs (\n\tid INTEGER NOT NULL, \n\tstarted_at DATETIME NOT NULL, \n\tfinished_at DATETIME, \n\tstatus TEXT NOT NULL, \n\tworker TEXT NOT NULL, \n\timages INTEGER NOT NULL, \n\timages_unchanged INTEGER NOT NULL, \n\timages_failed INTEGER NOT NULL, \n\tlayers_indexed INTEGER NOT NULL, \n\tlayers_known INTEGER NOT NULL, \n\tlayers_skipped INTEGER NOT NULL, \n\tlayers_failed INTEGER NOT NULL, \n\tbytes BIGINT NOT NULL, \n\terrors TEXT, images_deferred INTEGER DEFAULT '0' NOT NULL, deferred_until DATETIME, lists_failed INTEGER DEFAULT '0' NOT NULL, \n\tCONSTRAINT pk_runs PRIMARY KEY (id)\n)",
    "CREATE TABLE targets (\n\treference TEXT NOT NULL, \n\tlast_checked DATETIME, \n\tlast_digest TEXT, \n\tfailures INTEGER NOT NULL, \n\tlast_error TEXT, \n\tnext_attempt DATETIME, \n\tlease_owner TEXT, \n\tlease_until DATETIME, \n\tCONSTRAINT pk_targets PRIMARY KEY (reference)\n)",
    "CREATE INDEX ix_layers_diff_ref ON layers (diff_ref)",
    'CREATE TABLE "entries" (\n\tdiff_ref INTEGER NOT NULL, \n\tdir_id INTEGER NOT NULL, \n\tname_id INTEGER NOT NULL, \n\ttype SMALLINT NOT NULL, \n\tsize BIGINT NOT NULL, \n\tmode INTEGER NOT NULL, \n\tuid INTEGER NOT NULL, \n\tgid INTEGER NOT NULL, \n\tmtime BIGINT NOT NULL, \n\tlink_target TEXT, \n\tsha256 TEXT, \n\tCONSTRAINT pk_entries PRIMARY KEY (diff_ref, dir_id, name_id)\n)\n WITHOUT ROWID\n\n',
    "CREATE INDEX ix_entries_sha256 ON entries (sha256) WHERE sha256 IS NOT NULL",
    "CREATE INDEX ix_entries_name_layer ON entries (name_id, diff_ref, dir_id, type)",
)
