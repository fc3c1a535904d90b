dist_doc_DATA += docs/api.md
dist_man8_MANS = docs/futured.8
dist_man5_MANS = docs/futured.conf.5
