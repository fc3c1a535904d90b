dist_doc_DATA += docs/api.md
