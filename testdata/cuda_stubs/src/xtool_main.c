/* An executable that prints the answer of the one stub library it links (STUB_SYMBOL,
 * given with -D): the program the ELF-executable wheels (toolx) ship. */
#include <stdio.h>

int STUB_SYMBOL(void);

int main(void) {
    printf("%s: %d\n", TOOL_NAME, STUB_SYMBOL());
    return 0;
}
