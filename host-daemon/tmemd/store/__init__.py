"""The tmem store: semantics, pools, codecs, the frame arena and the two page stores."""
