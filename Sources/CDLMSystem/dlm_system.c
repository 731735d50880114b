#include "dlm_system.h"

#include <malloc.h>

int dlm_disable_malloc_fastbins(void)
{
	return mallopt(M_MXFAST, 0);
}
