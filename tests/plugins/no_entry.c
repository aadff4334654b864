/* Test plugin: a valid shared object that exports something, but not
 * apex_plugin_entry. */
#include "apex/plugin.h"

APEX_PLUGIN_EXPORT int apex_plugin_entry_misspelled(void);
int apex_plugin_entry_misspelled(void) { return 1; }
