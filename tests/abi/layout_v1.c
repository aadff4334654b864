/* The layout of the first ABI-1 headers (0.1.0): compiled against the frozen
 * copies in tests/abi/v1 only, it records every field's offset and size and
 * every constant's value for test_abi_layout.c to compare with today's. */
#include <stddef.h>

#include "apex/apex.h"

#include "abi_fields.h"

#ifdef APEX_STATS_INIT
#error "layout_v1.c must be built against tests/abi/v1, the 0.1.0 headers"
#endif

const abi_row_t abi_v1_rows[] = {
    ABI_V1_FIELDS(ABI_ROW_F) ABI_V1_FROZEN_STRUCTS(ABI_ROW_S) ABI_V1_CONSTANTS(ABI_ROW_C){NULL, 0, 0}};

const long long abi_v1_sizeof_config = sizeof(apex_manager_config_t);
const long long abi_v1_sizeof_submit_opts = sizeof(apex_submit_opts_t);
const long long abi_v1_sizeof_plugin_desc = sizeof(apex_plugin_desc_t);
const long long abi_v1_sizeof_action_desc = sizeof(apex_action_desc_t);
