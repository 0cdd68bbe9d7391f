/* frontend.c: the one place a modality is dispatched: its front-end's operations. */
#include "d2v/frontend.h"

#include "d2v/dataset.h"
#include "d2v/util.h"

const FrontendOps *frontend_ops(int modality) {
    switch (modality) {
    case D2V_TEXT:
        return &frontend_text;
    case D2V_IMAGE:
        return &frontend_image;
    case D2V_SPEECH:
        return &frontend_speech;
    }
    die("no front-end for modality %d", modality);
}
