# ThreadSanitizer build (KVTIER_TSAN): owned by the TSan work; see scripts/tsan.sh.
add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=thread> $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>)
add_link_options(-fsanitize=thread)
