# cmake/layout.cmake -- where the drop-in library's code and data lie in
# memory, so that a small process touches as few of its pages as it can.
#
# Why: the kernel maps up to 64 KiB of already-cached file pages around every
# page of a mapping that a process first touches (fault-around), so one call
# into a rarely used function maps its neighbours too, and all 62 KiB of
# text were resident in every process. trimalloc_layout_script() writes a
# linker script (GNU ld/lld INSERT form, which augments the default script)
# that puts:
#   - the code a small process runs (start-up, the malloc family, thread
#     caches, slabs, thread exit, fork) in .text;
#   - everything else (_heapmin, _heapwalk and the CRT heap family, stats,
#     huge blocks, purge, diagnostics) in .text.tm_cold, after .rodata, so it
#     is a mapping of its own that fault-around never reaches from hot code;
#     the unwind tables follow in a read-only mapping of their own and stay
#     out of memory unless something unwinds;
#   - in .bss, the variables a small process writes (or reads: where the
#     kernel maps no shared zero page, a read of untouched memory costs a
#     page too) together, from the page the dynamic loader dirties anyway
#     (the end of .data), then the rest.
# A function or variable missing from these lists still works; it only costs
# memory when a small process uses it. tests/api/footprint.c fails when a
# small workload runs cold code (in GCC's Release build, which these lists
# are made for; it skips the check in others). Valgrind (3.19) takes symbols only from the
# section named .text, so its tools name cold functions "???"; configure
# with -DTRIMALLOC_LAYOUT=OFF to profile those. Needs -ffunction-sections -fdata-sections;
# a function NAME is matched as .text.NAME, its clones (.text.NAME.*), the
# part GCC splits off as unlikely (.text.unlikely.NAME[.*]) and, for a
# constructor, .text.startup.NAME.

set(TRIMALLOC_HOT_FUNCTIONS
  # alloc.c
  malloc free calloc realloc reallocarray aligned_alloc memalign posix_memalign
  valloc pvalloc malloc_usable_size free_sized free_aligned_sized
  tm_malloc_impl tm_free_impl tm_realloc_impl tm_alloc_aligned tm_class_aligned tm_usable_size
  large_alloc free_generic free_cold free_to_cache_miss free_suspect_double small_block_free_reported
  realloc_move elf_sym_is
  # alloc.c: the C++ operators
  _Znwm _Znam _ZnwmRKSt9nothrow_t _ZnamRKSt9nothrow_t _ZnwmSt11align_val_t
  _ZnamSt11align_val_t _ZnwmSt11align_val_tRKSt9nothrow_t _ZnamSt11align_val_tRKSt9nothrow_t
  _ZdlPv _ZdaPv _ZdlPvm _ZdaPvm _ZdlPvRKSt9nothrow_t _ZdaPvRKSt9nothrow_t _ZdlPvSt11align_val_t
  _ZdaPvSt11align_val_t _ZdlPvmSt11align_val_t _ZdaPvmSt11align_val_t
  _ZdlPvSt11align_val_tRKSt9nothrow_t _ZdaPvSt11align_val_tRKSt9nothrow_t
  # override.c
  __libc_malloc __libc_free __libc_calloc __libc_realloc __libc_memalign
  __libc_valloc __libc_pvalloc __libc_cfree cfree __posix_memalign
  # init.c, options.c, size_class.c
  tm_constructor tm_cxx_init cxx_resolve tm_init_slow tm_fork_register fork_prepare fork_parent fork_child
  options_init size_class_init
  # os.c
  os_map os_map_aligned os_map_aligned_ex os_unmap os_purge os_purge_inside os_purge_ranges os_huge_pages os_ncpus os_random os_now_ns
  os_now_ns_raw os_getpid os_gettid os_thread_exiting os_yield
  # meta.c, pagemap.c
  meta_alloc meta_map meta_free meta_fork_prepare meta_fork_parent meta_fork_child
  pagemap_set pagemap_clear pagemap_fork_prepare pagemap_fork_parent pagemap_fork_child
  # tcache.c
  tcache_malloc_slow tcache_free_slow tcache_get_slow tcache_create may_make_cache tcache_init tc_key_create
  tcache_settle_locked tcache_destructor tc_first_key_dtor tcache_drain_locked tcache_gc_locked
  tcache_arena xfer_get xfer_put xfer_gc xfer_take xfer_set xfer_count xfer_set_make_locked xfer_flush_out
  bin_flush block_arena tcache_registry_lock tcache_registry_unlock tm_ptrs_copy tm_ptrs_move
  tcache_registry_first xfer_fork_prepare xfer_fork_parent xfer_fork_child
  tcache_fork_child tcache_free_large queued_pages rl_push_owner tcache_gc_tick_large tcache_large_reuse
  bin_reset bin_restart bin_cap bin_cap_start bin_cap_max refill_want slots_release_first slots_purge_grown rl_cut
  drain_at_exit_locked drain_bins_locked recycled_push_locked recycled_pop_locked
  cache_share cap_now max_now gc_tick_unlocked slow_path_tick arena_decay_epoch_passed
  xfer_flush_arena arena_bind_locked orphans_release_now_locked orphan_gap_ns tcache_orphans_tick
  release_orphaned_arenas orphaned_arenas_locked
  # arena.c
  arena_get arena_choose_locked arena_grow_locked arena_refill refill_locked arena_refill_other arena_refill_remote lender_at
  partial_elsewhere arena_flush arena_alloc_large
  arena_free_large large_free_locked arena_free_large_batch arena_large_usable
  arena_large_resize_in_place slab_of slab_settle_locked
  slab_destroy_locked slab_set_fresh_locked slab_set_purged_locked arena_release_idle_slab
  arena_release_empty_slabs arena_settle_locked
  arena_fork_prepare arena_fork_parent arena_fork_child arena_lock_settled
  # chunk.c
  chunk_create chunk_make chunk_from_huge_cache chunk_attach_locked chunk_link_locked chunk_adopt chunk_attach_as_is_locked chunk_detach_locked run_alloc_locked run_free_locked arena_decay_tick
  decay_close_quarter_locked decay_catch_up_locked chunk_attach_dirty_locked runs_find_locked run_mark resident_span
  run_hold_locked run_unhold_locked stash_free_locked
  run_free_large_locked run_stash_flush_locked
  run_insert_free_locked runs_index_insert_locked runs_index_remove_locked
  run_try_grow_locked run_shrink_locked chunk_slot_take_locked chunk_slot_put_locked
  resident_set_locked purge_victim_next chunk_resident_count chunk_resident_set idle_pages slot_find
  arena_release_orphaned growth_purge_locked growth_purge_budget growth_purge_budget_locked
  # background.c
  background_set background_start background_running background_fork_child
  # huge.c, heapmin.c, stats.c: what fork, exit, a purge and an arena's growth call
  huge_take_chunk huge_fork_prepare huge_fork_parent huge_fork_child
  heapmin_lock heapmin_unlock heapmin_trylock heapmin_fork_child
  stats_add_released stats_print_at_exit)

set(TRIMALLOC_HOT_DATA
  # Indexed by arena, 32 KiB: a small process writes the first entries,
  # which land on the page the loader dirties anyway (idle_arenas, 32 bytes
  # read by every allocation on fresh pages, just before them).
  idle_arenas rss
  # Written at start-up or by any allocation: 2.4 KiB, ordered so that the
  # 32-byte-aligned ones (locks, tables) leave no padding before the next
  # (the 8-, 4- and 1-byte ones fill their tails).
  init_lock init_owner tm_cookie_key slot_total base_cache_bytes full_cache_bytes
  tm_opt slot_grown_start
  tm_bin_tiny tc_key_ok tm_initialized tm_fork_ready init_running tc_key registry_count tm_narenas registry
  tm_class_fast recycled meta_cur meta_end
  tm_classes meta_total huge_cache_count
  slot_grown os_fail_countdown_active orphan_last_ns tm_orphan_due
  slot_first slot_start slot_first_start xfer_cap registry_lock arenas_lock meta_lock pm_lock tm_gstats meta_freed
  # The other small variables, 0.6 KiB: fork, thread exit, the decay, the
  # huge-block cache and C++'s operators read or write some of these in a
  # small process, and their own pages were two more (cxx_next and
  # decay_epoch on one, the thread registry's counters on another;
  # measured, /proc/self/pagemap of bench/throughput tight, batch and
  # larson).
  cxx_next purge_budget trim_turn bg_set_lock trim_mu huge_mu
  decay_epoch trim_next trim_serving huge_cache huge_cache_bytes huge_live huge_live_bytes
  huge_live_mapped barrier_page fail_countdown os_purge_probe os_purge_syscalls
  idle_window_ns idle_xfer_gc_ns take_buf take_cap take_faulted world_busy_skipped
  world_wait_windows
  cxx_mode bg_running decay_first ctor_ran fail_sticky interrupts.0 membarrier_state
  drained_unused_caches initial_arena recycled_warm tc_first_key
  vec_refused tc_first_key_ok
  # Indexed by arena too, 5 KiB (a small process touches the first entries).
  arena_bound tm_arenas xfer_sets
  # The pagemap: root[0] (free(NULL)) shares the page above; its last root
  # entries and the zero leaf's first share one more (pagemap.c).
  pm_map)

# Write the linker script to OUT.
function(trimalloc_layout_script out)
  set(text "")
  foreach(f IN LISTS TRIMALLOC_HOT_FUNCTIONS)
    string(APPEND text "    *(.text.${f} .text.${f}.* .text.unlikely.${f} .text.unlikely.${f}.* .text.startup.${f})\n")
  endforeach()
  set(data "")
  foreach(v IN LISTS TRIMALLOC_HOT_DATA)
    string(APPEND data "    *(.bss.${v})\n")
  endforeach()
  file(WRITE ${out}.tmp
"/* Generated by cmake/layout.cmake, which says why. */
SECTIONS
{
  .text :
  {
    /* C runtime, libgcc and libc_nonshared code (pthread_atfork, atexit) */
    EXCLUDE_FILE(*.c.o) *(.text .text.*)
${text}  }
}
INSERT BEFORE .text;

SECTIONS
{
  . = ALIGN(CONSTANT (MAXPAGESIZE));
  .text.tm_cold :
  {
    *(.text.unlikely .text.*_unlikely .text.unlikely.*)
    *(.text.exit .text.exit.*)
    *(.text.startup .text.startup.*)
    *(.text.hot .text.hot.*)
    *(.text .stub .text.*)
  }
  . = ALIGN(CONSTANT (MAXPAGESIZE));
}
INSERT AFTER .rodata1;

SECTIONS
{
  /* The thread-cache sentinel: read by every thread's first allocation,
   * never written (its bins are empty with no room), so it can share the
   * page the loader writes relocations to and then makes read-only (a
   * write to it now faults, as it should). */
  .data.rel.ro :
  {
    *(.data.rel.ro.local* .gnu.linkonce.d.rel.ro.local.*)
    *(.data.rel.ro .data.rel.ro.* .gnu.linkonce.d.rel.ro.*)
    *(.bss.tm_tcache_sentinel)
  }
}
INSERT BEFORE .data.rel.ro;

SECTIONS
{
  .bss.tm_hot :
  {
    /* the C runtime's (crtstuff's flag for its exit-time destructors) */
    EXCLUDE_FILE(*.c.o) *(.bss)
${data}  }
}
INSERT BEFORE .bss;
")
  configure_file(${out}.tmp ${out} COPYONLY) # rewritten only when it changes
endfunction()
